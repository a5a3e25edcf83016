"""The training engine that pre-training and fine-tuning share.

* :mod:`refers.engine.trainer`: the one training loop (:class:`~refers.engine.trainer.Trainer`) and
  the :class:`~refers.engine.trainer.Task` protocol a stage implements;
* :mod:`refers.engine.step`: one optimiser step (gradient accumulation with ``no_sync``, scaler,
  clipping), the only caller of ``.backward()``;
* :mod:`refers.engine.precision`: torch.amp, the only creator of ``autocast`` and ``GradScaler``;
* :mod:`refers.engine.sharded`: sharded evaluation, every item once, in order;
* :mod:`refers.engine.train_state`, :mod:`refers.engine.sampling`, :mod:`refers.engine.run_log`,
  :mod:`refers.engine.distributed`: checkpoints and RNG, resumable data order, TensorBoard/CSV
  logging, process groups;
* :mod:`refers.engine.pretrain_loop` (with ``pretrain_parts``, ``pretrain_eval``, ``optim``,
  ``export``): the pre-training task; fine-tuning's is :mod:`refers.finetune.train`.
"""
