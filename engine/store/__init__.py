"""The models directory: finding checkpoints and other files, baking them, loading them, the loaded model."""
