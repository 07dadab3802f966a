#!/usr/bin/env python3
"""The PyTorch serving baseline for `imcap serve`: a captioning HTTP server as IBM's MAX Image
Caption Generator builds one (a Python web server, torchvision transforms, one image per request
through the notebook's EncoderCNN and DecoderRNN.sample()), with Python's own http.server.

  /usr/bin/python3 bench/serve_baseline.py --make-model DIR [--image-size 32]
      writes DIR/encoder-1.pkl, decoder-1.pkl, vocab.pkl (the notebooks' format, ResNet-18,
      embed 128, hidden 256: the demo's sizes) from a seeded random initialisation, for
      `imcap import-pytorch` to serve the same weights
  /usr/bin/python3 bench/serve_baseline.py --serve DIR --port 8090 [--threads 2]
      POST /v1/caption with the image's bytes -> {"captions": [{"text", "log_prob"}]}

bench/serve_side_by_side.py runs both servers and the load.
"""
import argparse
import io
import json
import os
import pickle
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch
import torchvision
from PIL import Image

WORDS = ["a", "an", "the", "red", "green", "blue", "yellow", "small", "large", "circle",
         "square", "triangle", "left", "right", "of", "and", "above", "below", "two", "three",
         "one", "striped", "plain", "dotted", "checkered", "with", "on", "next", "to", "."]
E, H = 128, 256


def vocabulary_module(folder):
    """The notebooks' vocabulary.py, so that vocab.pkl unpickles as theirs does."""
    with open(os.path.join(folder, "vocabulary.py"), "w") as f:
        f.write("class Vocabulary(object):\n"
                "    def __init__(self):\n"
                "        self.word2idx = {}\n"
                "        self.idx2word = {}\n"
                "        self.idx = 0\n"
                "        self.start_word = '<start>'\n"
                "        self.end_word = '<end>'\n"
                "        self.unk_word = '<unk>'\n"
                "    def add_word(self, word):\n"
                "        if word not in self.word2idx:\n"
                "            self.word2idx[word] = self.idx\n"
                "            self.idx2word[self.idx] = word\n"
                "            self.idx += 1\n")
    sys.path.insert(0, folder)
    import vocabulary  # noqa: E402
    return vocabulary


# The notebook's modules, as the parity tests define them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "python"))
from models_reference import DecoderRNN, EncoderCNN  # noqa: E402


class Decoder(DecoderRNN):
    def sample_with_log_prob(self, inputs, end_id, max_len=20):
        """The notebook's greedy sample(), stopping at <end>, with the caption's log-probability
        (MAX's server returns each caption's probability)."""
        ids, log_prob, states = [], 0.0, None
        for _ in range(max_len):
            hiddens, states = self.lstm(inputs, states)
            scores = torch.log_softmax(self.linear(hiddens.squeeze(1)), 1)
            value, predicted = scores.max(1)
            log_prob += value.item()
            if predicted.item() == end_id:
                break
            ids.append(predicted.item())
            inputs = self.embed(predicted).unsqueeze(1)
        return ids, log_prob


def make_model(folder):
    os.makedirs(folder, exist_ok=True)
    vocabulary = vocabulary_module(folder)
    vocab = vocabulary.Vocabulary()
    for w in ["<start>", "<end>", "<unk>"] + WORDS:
        vocab.add_word(w)
    torch.manual_seed(0)
    encoder, decoder = EncoderCNN("resnet18", E), Decoder(E, H, len(vocab.word2idx))
    torch.save(encoder.state_dict(), os.path.join(folder, "encoder-1.pkl"))
    torch.save(decoder.state_dict(), os.path.join(folder, "decoder-1.pkl"))
    with open(os.path.join(folder, "vocab.pkl"), "wb") as f:
        pickle.dump(vocab, f)


def set_blas_threads(n):
    """OpenBLAS's own threads, as ../shared/bench/python_baseline.py sets them with --threads."""
    import ctypes
    torch.randn(64, 64) @ torch.randn(64, 64)  # maps the BLAS
    with open("/proc/self/maps") as f:
        paths = {line.split()[-1] for line in f if "openblas" in line and "/" in line}
    for path in paths:
        lib = ctypes.CDLL(path)
        if hasattr(lib, "openblas_set_num_threads"):
            lib.openblas_set_num_threads(n)


def serve(folder, port, threads, image_size):
    torch.set_num_threads(threads)
    set_blas_threads(threads)
    vocabulary_module(folder)
    with open(os.path.join(folder, "vocab.pkl"), "rb") as f:
        vocab = pickle.load(f)
    encoder, decoder = EncoderCNN("resnet18", E), Decoder(E, H, len(vocab.word2idx))
    encoder.load_state_dict(torch.load(os.path.join(folder, "encoder-1.pkl")))
    decoder.load_state_dict(torch.load(os.path.join(folder, "decoder-1.pkl")))
    encoder.eval()
    decoder.eval()
    end_id = vocab.word2idx["<end>"]
    transform = torchvision.transforms.Compose([
        torchvision.transforms.Resize(image_size),
        torchvision.transforms.CenterCrop(image_size),
        torchvision.transforms.ToTensor(),
        torchvision.transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else each reply waits for the client's delayed ACK

        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(200, {"status": "ok"})

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            try:
                image = Image.open(io.BytesIO(body)).convert("RGB")
            except Exception as e:  # noqa: BLE001 - any decoding failure is the client's
                self.reply(400, {"error": str(e)})
                return
            with torch.no_grad():
                _, features = encoder(transform(image).unsqueeze(0))
                ids, log_prob = decoder.sample_with_log_prob(features.unsqueeze(1), end_id)
            text = " ".join(vocab.idx2word[i] for i in ids)
            self.reply(200, {"captions": [{"text": text, "log_prob": log_prob}]})

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"serve_baseline: listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--make-model")
    p.add_argument("--serve")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--image-size", type=int, default=32)
    a = p.parse_args()
    if a.make_model:
        make_model(a.make_model)
    elif a.serve:
        serve(a.serve, a.port, a.threads, a.image_size)
    else:
        p.error("give --make-model DIR or --serve DIR")


if __name__ == "__main__":
    main()
