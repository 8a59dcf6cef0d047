// tessera/io/progress.hpp — a progress bar for long loads, on stderr.
//
// It stays silent unless it is useful and harmless: by default it draws only
// when stderr is a terminal (so logs and CI output never fill with carriage
// returns) and only once the work has run longer than a delay (1 s), so a
// quick load prints nothing. Redraws are rate-limited. Everything it writes
// goes through a sink, so tests (and programs with their own UI) can capture
// or redirect it.
//
//   ProgressBar bar("loading weights", total_bytes);
//   for (...) { ...; bar.advance(tensor_bytes); }
//   bar.finish();   // also done by the destructor
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

namespace tessera::io {

enum class ProgressMode : std::uint8_t {
  auto_tty,  // draw only when stderr is a terminal
  always,    // draw regardless (tests, or a sink that is not stderr)
  never,
};

struct ProgressOptions {
  ProgressMode mode = ProgressMode::auto_tty;
  std::chrono::milliseconds delay{1000};    // nothing is drawn before this much time has passed
  std::chrono::milliseconds interval{100};  // at most one redraw per interval
  int width = 30;                           // characters of the bar itself
  // Receives each redraw ("\r..." lines, then a final "\n"); default: stderr.
  std::function<void(std::string_view)> sink;
};

// A byte-counting progress bar. Not thread-safe: advance from one thread.
class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;

  ProgressBar(std::string label, std::uint64_t total, ProgressOptions options = {})
      : label_(std::move(label)), total_(total), options_(std::move(options)), start_(Clock::now()) {
    enabled_ = options_.mode == ProgressMode::always ||
               (options_.mode == ProgressMode::auto_tty && ::isatty(STDERR_FILENO) == 1);
  }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  // Ends the line if the bar was drawn, so that whatever follows (an error
  // message after a failed load, say) starts on a line of its own.
  ~ProgressBar() {
    if (shown_ && !finished_) write("\n");
  }

  void advance(std::uint64_t amount) {
    done_ = std::min(total_, done_ + amount);
    if (!enabled_ || finished_) return;
    const auto now = Clock::now();
    if (now - start_ < options_.delay) return;
    if (shown_ && now - last_draw_ < options_.interval && done_ < total_) return;
    draw(now);
  }

  // Draws the final state and ends the line, if the bar was ever shown.
  void finish() {
    if (finished_) return;
    if (shown_) {
      draw(Clock::now());
      write("\n");
    }
    finished_ = true;
  }

  bool shown() const noexcept { return shown_; }
  std::uint64_t done() const noexcept { return done_; }

  // One line of the bar (without "\r"): "label [####      ]  42% 1.2/2.9 GiB 850.0 MiB/s".
  static std::string render(std::string_view label, std::uint64_t done, std::uint64_t total, double seconds,
                            int width) {
    const double fraction = total == 0 ? 1.0 : static_cast<double>(done) / static_cast<double>(total);
    const int filled = static_cast<int>(fraction * width);
    std::string line(label);
    line += " [";
    line.append(static_cast<std::size_t>(filled), '#');
    line.append(static_cast<std::size_t>(std::max(0, width - filled)), ' ');
    char tail[96];
    const double rate = seconds > 0 ? static_cast<double>(done) / seconds : 0.0;
    std::snprintf(tail, sizeof tail, "] %3d%% %s / %s %s/s", static_cast<int>(fraction * 100.0),
                  format_bytes(static_cast<double>(done)).c_str(), format_bytes(static_cast<double>(total)).c_str(),
                  format_bytes(rate).c_str());
    return line + tail;
  }

  // "512 B", "1.5 KiB", "3.2 GiB".
  static std::string format_bytes(double bytes) {
    static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int unit = 0;
    while (bytes >= 1024.0 && unit < 4) {
      bytes /= 1024.0;
      ++unit;
    }
    char text[32];
    if (unit == 0) std::snprintf(text, sizeof text, "%.0f %s", bytes, kUnits[unit]);
    else std::snprintf(text, sizeof text, "%.1f %s", bytes, kUnits[unit]);
    return text;
  }

 private:
  void draw(Clock::time_point now) {
    const double seconds = std::chrono::duration<double>(now - start_).count();
    // Appended rather than "\r" + render(...): GCC 12 at -O3 reports a false
    // -Wrestrict overlap for operator+(const char*, std::string&&).
    std::string line(1, '\r');
    line += render(label_, done_, total_, seconds, options_.width);
    write(line);
    shown_ = true;
    last_draw_ = now;
  }
  void write(const std::string& text) {
    if (options_.sink) {
      options_.sink(text);
    } else {
      std::fwrite(text.data(), 1, text.size(), stderr);
      std::fflush(stderr);
    }
  }

  std::string label_;
  std::uint64_t total_;
  std::uint64_t done_ = 0;
  ProgressOptions options_;
  Clock::time_point start_;
  Clock::time_point last_draw_{};
  bool enabled_ = false;
  bool shown_ = false;
  bool finished_ = false;
};

}  // namespace tessera::io
