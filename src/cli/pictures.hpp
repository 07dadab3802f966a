// Pictures and HTML for the CLI's reports: `imcap caption --attention DIR` and the demo's
// report.html. The attention of each word is drawn over the part of the image the model saw.
#pragma once

#include <string>
#include <vector>

#include <torch/types.h>

#include "imcap/image.hpp"

namespace imcap::cli {

std::string base64(const std::string& bytes);
std::string html_escape(const std::string& text);
/// The PNG file of an image, in memory.
std::string encode_png(const Image& image);

/// The square the model's evaluation transform crops from `image` (resize the shorter side,
/// centre crop), at `side` x `side` pixels.
Image model_view(const Image& image, const TransformOptions& transform, int side);

/// One tile per word, left to right, `columns` per row: the word above `view` darkened where
/// the word's attention is low. attention: [words, S * S] (Caption::attention), upsampled
/// bilinearly over the view and scaled by its maximum per word.
Image attention_strip(const Image& view, const torch::Tensor& attention,
                      const std::vector<std::string>& words, int columns = 8);

/// An HTML fragment: one figure per word, the view with an SVG overlay of the S x S cells
/// (darker where the attention is lower; each cell's weight as its tooltip). `id` must be unique
/// in the page: it names the figure's CSS class, which holds the view once.
std::string attention_figures_html(const Image& view, const torch::Tensor& attention,
                                   const std::vector<std::string>& words, const std::string& id);

}  // namespace imcap::cli
