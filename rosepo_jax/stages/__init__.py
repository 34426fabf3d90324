"""The pipeline's stages, one module each, in the order data flows through them:

  data -> sft -> oracle -> negatives -> preference ("dpo") -> eval -> export -> report

plus `compile`, a check that writes nothing. Each module's docstring and its `STAGE`
(`rosepo_jax.workdir.Stage`) say which config keys it reads, which units it consumes and which
paths it writes, next to its `run`. With hybrid item embeddings (`model.item_embeddings=
"oracle"`) sft reads the oracle, which then runs first (`pipeline.stage_order`). The runner (`rosepo_jax.pipeline`) imports them; they never
import it.
"""
