"""Language-model unlearning (issue #14): a TOFU-style task and the methods compared on it."""
