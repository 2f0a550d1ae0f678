"""Training: PEFT methods, the training loop (engine), one run (runs), lr tuning, variants, scoring."""
