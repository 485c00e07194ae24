"""What the replicas of one deployment share through Redis: rate buckets, stored responses, runtime LoRA adapters."""
