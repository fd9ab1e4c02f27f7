"""Models that leave tinylm and models that come in: HuggingFace export and import, and
checkpoints used as models.

hf_export.py   a tinylm model -> a transformers directory (config.json, model.safetensors)
hf_import.py   a GPT-2-family (or exported GPT-NeoX / StableLM) transformers directory -> a tinylm model
hf_tokenizer.py tinylm tokenizers <-> HF tokenizer files (tokenizer.json, vocab.json + merges.txt)
checkpoint.py  a training checkpoint (<output>.ckpt/step-N.ckpt) loaded as a model
commands.py    the `tinylm export` and `tinylm import` subcommands

Export writes plain files (JSON and safetensors) and needs neither transformers nor tokenizers;
nothing here imports them (the tests use transformers as the reference). The library below
(model/, tokenizers/, train/) knows nothing about this package.
"""
