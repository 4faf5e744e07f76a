"""From A1111 prompt text to conditioning: the parser, encoders, embeddings, LoRAs, styles."""
