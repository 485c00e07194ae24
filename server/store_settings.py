"""What the server keeps beyond one request, and where: the Responses store's bounds and the fleet's Redis. Part of
the flat `server.settings.Settings`.

Without a Redis URL every replica keeps its own state, in memory. With one, the replicas of a deployment share
their rate buckets, stored responses and runtime LoRA adapters through it (server/fleet/).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr


class StoreFields(BaseModel):
    # --- the Responses store (server/store/responses.py)
    responses_store_max_count: int = Field(
        10_000, ge=1, description="most stored responses (store: true) kept; past it the oldest go first"
    )
    responses_store_max_age_s: float = Field(
        30 * 24 * 3600, gt=0, description="a stored response's lifetime in seconds (OpenAI's: 30 days)"
    )
    # --- the fleet's shared state (server/fleet/)
    redis_url: SecretStr | None = Field(
        None, description="redis://[user:password@]host:port/db shared by every replica (unset: state per replica)"
    )
    redis_url_file: Path | None = Field(
        None, description="file holding the Redis URL (a mounted secret); instead of redis_url"
    )
    redis_timeout_s: float = Field(
        0.25, gt=0, description="time limit of one Redis call; past it the call counts as failed (limits fail open)"
    )
    redis_deployment: str | None = Field(
        None, description="the name this deployment's replicas share their state under in Redis, apart from other "
        "deployments on the same Redis (unset: served_model_name, else model, else 'default')"
    )
    rate_limit_fallback_s: float = Field(
        5.0, gt=0, description="after a Redis call failed, seconds this replica's own rate buckets decide before "
        "Redis is tried again"
    )
    adapter_sync_interval_s: float = Field(
        1.0, gt=0, description="how often each replica checks the fleet's record of runtime LoRA adapters (seconds)"
    )

    def shared_state_name(self) -> str:
        """The deployment's name in Redis keys (llamaserve:<name>:...)."""
        fallback = getattr(self, "served_model_name", None) or getattr(self, "model", None) or "default"
        return self.redis_deployment or fallback

    def shared_state_url(self) -> str | None:
        """The Redis URL from the setting or its file, or None when the replicas keep their own state."""
        if self.redis_url is not None:
            return self.redis_url.get_secret_value().strip() or None
        if self.redis_url_file is not None:
            return self.redis_url_file.read_text().strip() or None
        return None
