"""Training the compositional tiny world's models (``alignzoo tinyworld train --stage NAME``,
``stages.py``): its judges (``train_geneval``), preference reward (``train_preference``), VAE and
SD (``base_models``), SD-Turbo and LCM distillations (``distill``), and their evaluations. The
world's definitions (grammar, renderer, judge nets, preference rules) stay in
``alignzoo.tinyworld.compose``, below every package that uses them."""
