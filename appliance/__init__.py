"""Hospital edge appliance core: model loading, layer selection, notes, training, evaluation."""

import os

# Never touch a model hub: weights come from a local path IT provides or the embedded package.
# Set before anything imports transformers or huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
