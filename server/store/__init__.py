"""What the server keeps beyond one request: stored Responses (server/store/responses.py), in memory or shared."""
