"""Using a trained model: predict, draw predictions, export, model card."""
