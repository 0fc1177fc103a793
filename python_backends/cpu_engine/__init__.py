"""The ``cpu`` engine profile: a Hugging Face causal LM run with torch on CPU."""
