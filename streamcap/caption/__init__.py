"""Scene captions: image encoder, attention LSTM decoder, decoding, smoothing, checkpoints.

Heavy modules (torch) are imported lazily so ``smoothing`` stays importable on its own.
"""
