#include "train/loss_plot.h"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>

#include "common/error.h"

namespace flashlm {
namespace {

constexpr int kWidth = 720, kHeight = 420, kLeft = 70, kRight = 20, kTop = 20, kBottom = 40;

struct Image {
  std::vector<uint8_t> rgb = std::vector<uint8_t>(kWidth * kHeight * 3, 255);
  void set(int x, int y, std::array<uint8_t, 3> c) {
    if (x < 0 || y < 0 || x >= kWidth || y >= kHeight) return;
    std::copy(c.begin(), c.end(), rgb.begin() + (static_cast<size_t>(y) * kWidth + x) * 3);
  }
  void line(double x0, double y0, double x1, double y1, std::array<uint8_t, 3> c, int width = 1) {
    const int n = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
    for (int i = 0; i <= n; ++i) {
      const double x = x0 + (x1 - x0) * i / n, y = y0 + (y1 - y0) * i / n;
      for (int dx = 0; dx < width; ++dx) {
        for (int dy = 0; dy < width; ++dy) set(static_cast<int>(x) + dx, static_cast<int>(y) + dy, c);
      }
    }
  }
  // Digits, '.', '-' and 'e' in a 3x5 pixel font, scaled 2x.
  void text(int x, int y, const std::string& s) {
    static const std::array<const char*, 13> glyphs = {
        "111101101101111", "010110010010111", "111001111100111", "111001111001111",
        "101101111001001", "111100111001111", "111100111101111", "111001001001001",
        "111101111101111", "111101111001111", "000000000000010", "000000111000000",
        "111101111100111"};
    for (char ch : s) {
      const int g = ch >= '0' && ch <= '9' ? ch - '0' : ch == '.' ? 10 : ch == '-' ? 11 : ch == 'e' ? 12 : -1;
      if (g >= 0) {
        for (int r = 0; r < 5; ++r) {
          for (int col = 0; col < 3; ++col) {
            if (glyphs[g][r * 3 + col] != '1') continue;
            for (int k = 0; k < 4; ++k) set(x + 2 * col + k % 2, y + 2 * r + k / 2, {0, 0, 0});
          }
        }
      }
      x += 8;
    }
  }
};

void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
}

void chunk(std::vector<uint8_t>& out, const char* type, const std::vector<uint8_t>& data) {
  put_u32(out, static_cast<uint32_t>(data.size()));
  const size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put_u32(out, static_cast<uint32_t>(crc32(0, out.data() + start, static_cast<uInt>(out.size() - start))));
}

std::string label(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, std::abs(v) >= 1000 ? "%.0f" : "%.2f", v);
  return buf;
}

}  // namespace

void write_loss_plot(const std::string& path, const std::vector<LossPoint>& train,
                     const std::vector<LossPoint>& eval, int steps) {
  Image img;
  double lo = INFINITY, hi = -INFINITY;
  for (const auto* set : {&train, &eval}) {
    for (const LossPoint& p : *set) {
      if (!std::isfinite(p.loss)) continue;
      lo = std::min(lo, p.loss);
      hi = std::max(hi, p.loss);
    }
  }
  if (!(lo <= hi)) lo = 0, hi = 1;
  if (hi - lo < 1e-6) hi = lo + 1;
  const double pad = 0.05 * (hi - lo);
  lo -= pad;
  hi += pad;
  const int plot_w = kWidth - kLeft - kRight, plot_h = kHeight - kTop - kBottom;
  auto px = [&](int step) { return kLeft + plot_w * static_cast<double>(step) / std::max(steps, 1); };
  auto py = [&](double loss) { return kTop + plot_h * (hi - loss) / (hi - lo); };
  img.line(kLeft, kTop, kLeft, kTop + plot_h, {0, 0, 0});
  img.line(kLeft, kTop + plot_h, kLeft + plot_w, kTop + plot_h, {0, 0, 0});
  img.text(4, kTop, label(hi));
  img.text(4, kTop + plot_h - 10, label(lo));
  img.text(kLeft, kTop + plot_h + 12, "0");
  img.text(kLeft + plot_w - 8 * static_cast<int>(std::to_string(steps).size()), kTop + plot_h + 12,
           std::to_string(steps));
  for (size_t i = 1; i < train.size(); ++i) {
    img.line(px(train[i - 1].step), py(train[i - 1].loss), px(train[i].step), py(train[i].loss),
             {150, 150, 150});
  }
  for (size_t i = 0; i < eval.size(); ++i) {
    if (i > 0) {
      img.line(px(eval[i - 1].step), py(eval[i - 1].loss), px(eval[i].step), py(eval[i].loss),
               {30, 80, 220}, 2);
    }
    for (int d = -3; d <= 3; ++d) img.line(px(eval[i].step) - 3, py(eval[i].loss) + d, px(eval[i].step) + 3, py(eval[i].loss) + d, {30, 80, 220});
  }
  // PNG: 8-bit RGB, each row behind a filter byte 0, deflated.
  std::vector<uint8_t> raw;
  raw.reserve((kWidth * 3 + 1) * kHeight);
  for (int y = 0; y < kHeight; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), img.rgb.begin() + static_cast<size_t>(y) * kWidth * 3,
               img.rgb.begin() + static_cast<size_t>(y + 1) * kWidth * 3);
  }
  uLongf packed_size = compressBound(static_cast<uLong>(raw.size()));
  std::vector<uint8_t> packed(packed_size);
  if (compress(packed.data(), &packed_size, raw.data(), static_cast<uLong>(raw.size())) != Z_OK) {
    fail("could not compress the loss plot");
  }
  packed.resize(packed_size);
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<uint8_t> header;
  put_u32(header, kWidth);
  put_u32(header, kHeight);
  header.insert(header.end(), {8, 2, 0, 0, 0});
  chunk(png, "IHDR", header);
  chunk(png, "IDAT", packed);
  chunk(png, "IEND", {});
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
  if (!f) fail("cannot write the loss plot {}", path);
}

}  // namespace flashlm
