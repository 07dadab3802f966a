#!/usr/bin/env python3
"""Reference for test_search.cpp: greedy ids from the seed notebook's DecoderRNN.sample().

Usage: search_sample.py WEIGHTS.pt MAX_LEN
WEIGHTS.pt (written by torch::pickle_save) is a dict with the decoder's state dict entries
(embed.weight, lstm.*_l0, linear.*) and "features" [B, E]. Prints a JSON list of B id lists.
"""
import json
import sys

import torch
import torch.nn as nn


class DecoderRNN(nn.Module):
    def __init__(self, embed_size, hidden_size, vocab_size, num_layers=1):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size)
        self.lstm = nn.LSTM(embed_size, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, vocab_size)

    def sample(self, inputs, states=None, max_len=20):
        """The notebook's greedy loop: inputs [B, 1, E]; max_len ids per image, no stopping."""
        sampled = []
        for _ in range(max_len):
            hiddens, states = self.lstm(inputs, states)
            outputs = self.linear(hiddens.squeeze(1))
            _, predicted = outputs.max(1)
            sampled.append(predicted)
            inputs = self.embed(predicted).unsqueeze(1)
        return torch.stack(sampled, 1)


def main():
    # A dict of tensors that imcap's test wrote with torch::pickle_save. PyTorch 2.6+ loads with
    # weights_only=True by default, which refuses the torch.jit type tags of that format; the
    # file is the test's own (1.13 has the argument too).
    blob = torch.load(sys.argv[1], weights_only=False)
    max_len = int(sys.argv[2])
    features = blob.pop("features")
    vocab_size, embed_size = blob["embed.weight"].shape
    hidden_size = blob["lstm.weight_hh_l0"].shape[1]
    decoder = DecoderRNN(embed_size, hidden_size, vocab_size).eval()
    decoder.load_state_dict(blob)
    with torch.no_grad():
        ids = decoder.sample(features.unsqueeze(1), max_len=max_len)
    print(json.dumps(ids.tolist()))


if __name__ == "__main__":
    main()
