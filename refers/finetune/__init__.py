"""Fine-tuning, testing and prediction on the downstream datasets (NIH, VinBigData, Shenzhen, COVID-19).

One implementation for the four datasets the original copied four times:

* :mod:`refers.finetune.config`: every flag of the original ``train.py`` (plus ours), YAML presets;
* :mod:`refers.finetune.data`: list files, image roots, fractions, transforms, sharded evaluation order;
* :mod:`refers.finetune.model`: classifier, initial weights, fine-tuned checkpoints and their metadata;
* :mod:`refers.finetune.evaluate`: scoring every image exactly once under DDP, in list order;
* :mod:`refers.finetune.early_stopping`: the original's stopping rule, one decision for all ranks;
* :mod:`refers.finetune.train`: the fine-tuning task of the one training loop
  (:mod:`refers.engine.trainer`; torch.amp in place of apex in :mod:`refers.engine.precision`);
  :mod:`refers.finetune.testing`: ``test.py``;
* :mod:`refers.finetune.predict`: scoring user images (``refers predict``).
"""
