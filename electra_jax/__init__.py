"""electra_jax: ELECTRA in JAX/Flax NNX — pretraining, fine-tuning, evaluation, Hugging Face conversion."""

__version__ = "0.1.0"
