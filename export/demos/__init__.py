"""Demo data sets made from what ships inside installed packages (no downloads), and the training recipes."""
