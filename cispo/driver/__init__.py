"""The driver: the RL loop, the asynchronous pipeline, the run's built parts and state, dynamic sampling,
batching, weight publication and the restart supervisor. It holds no model weights."""
