"""The anchor `bench_predict` loads petclf's demo against: a typical hand-made Hugging Face Space over fastai.

    .venv/bin/python benchmarks/fastai_space.py EXPORT_PKL PORT      # serves on 127.0.0.1:PORT

What such a Space does: `load_learner` on fastai's `export.pkl`, `learn.predict` per request, behind a default
`gr.Interface(gr.Image(type="pil"), gr.Label(num_top_classes=3))` (default concurrency, torch on the CPU). Kept
plain on purpose; it is the baseline, not something to tune.
"""

import sys
import warnings

import gradio as gr
from fastai.vision.all import load_learner

from petclf.data import PetImage  # the pickled learner's image type (fastai's PILImage, decoded through load_rgb)

warnings.filterwarnings("ignore")


def make_predict(learn):
    """The Space's one function: a PIL image -> {breed: prob} over every breed."""
    labels = learn.dls.vocab

    def predict(img):
        _, _, probs = learn.predict(PetImage.create(img))
        return {labels[i]: float(probs[i]) for i in range(len(labels))}

    return predict


if __name__ == "__main__":
    learn = load_learner(sys.argv[1])
    gr.Interface(fn=make_predict(learn), inputs=gr.Image(type="pil"), outputs=gr.Label(num_top_classes=3),
                 title="Pet breed classifier").launch(server_name="127.0.0.1", server_port=int(sys.argv[2]))
