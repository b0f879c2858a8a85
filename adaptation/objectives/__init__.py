"""Training objectives: loss functions (`losses`), knowledge distillation, UL2 / PrefixLM tasks.

Kept free of imports so that `import adaptation.objectives.losses` pulls neither TensorFlow nor seqio.
"""
