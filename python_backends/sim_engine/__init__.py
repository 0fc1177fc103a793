"""The ``sim`` engine profile: an inflight-batching GPU engine emulated by sleeping."""
