"""Image files: decoding and encoding, image operations, infotexts."""
