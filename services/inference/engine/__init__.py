"""Pure-torch inference engine: the decoder, sampling, continuous-batching generation and classification."""
