"""Training the reimplemented methods with Lightning: ``python -m fvr_bench train method=<m> stage=<s>``.

The contract between the ``train`` command and a method:

* ``conf/method/<m>.yaml`` holds ``train.module`` (the method's
  :class:`~fvr_bench.methods.base.TrainingModule`, with nested ``_target_`` nodes: the restorer
  it trains, its loss objects) and ``train.stages.<s>`` with ``degradation`` (a
  ``conf/degradation`` preset name, or null for GT → GT), ``frames``, ``size``, ``batch_size``,
  ``max_steps``, ``init_from`` (an earlier stage whose last checkpoint initialises this one, or
  null), optional ``ema`` (decay, or null), ``precision``, ``pre_extract`` (call
  ``module.prepare(dataloader, cache_dir)`` before fitting), ``export`` (default true: write the
  weights-only ``restorer.safetensors`` + ``restorer.json`` at the end) and ``module``: the
  stage's differences (loss object, learning rate, what it trains), merged over
  ``train.module`` and instantiated by Hydra (:func:`.run.build_module`).
* Batches are dicts: ``gt`` ``(B, T, 3, S, S)`` float32 in [0, 1]; ``lq`` ``(B, T, 3, S, S)``
  in [0, 1] (the stage's degradation of ``gt``, resized back to S bicubically when the preset
  downscales; ``gt`` itself when it has none); ``clip_id`` (list of str); ``key`` (list of str,
  unique and stable per sample when ``augment`` is off). See :mod:`.data`.
* ``module.init_from_previous_stage(state_dict, previous_stage)`` receives the weights of the
  earlier stage (EMA weights when the run kept them) and decides what to copy and freeze.
* Checkpoints are Lightning checkpoints; :func:`fvr_bench.state_dicts.read_state` returns the
  weights a restorer should use (EMA when present); :mod:`.export` writes weights-only exports.
"""
