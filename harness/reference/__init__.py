"""`skoracle reference`: greedy decodes and activation dumps of the whole-model reference."""
