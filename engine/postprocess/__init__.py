"""After generation: upscalers, face restoration, extras, interrogation."""
