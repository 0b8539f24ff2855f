"""SqueezeBERT model, pretraining heads and the DeepSpeed trainer (see README.md)."""
