// MemoryBudget and Reservation, as dgs_sdk/memory.py.
#include "dgs/memory_budget.hpp"

#include <algorithm>
#include <string>

#include "dgs/error.hpp"
#include "dgs/limits.hpp"

namespace dgs {

MemoryBudget::MemoryBudget(std::int64_t capacity) : capacity_(capacity) {
  if (capacity < 1) {
    throw Error(Status::invalid_argument,
                "a memory budget needs a positive capacity, got " + std::to_string(capacity));
  }
}

std::int64_t MemoryBudget::used() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return used_;
}

std::int64_t MemoryBudget::peak() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return peak_;
}

Reservation::Reservation(MemoryBudget& budget, std::int64_t bytes) : budget_(budget) { resize(bytes); }

Reservation::~Reservation() { resize(0); }

void Reservation::resize(std::int64_t bytes) {
  MemoryBudget& b = budget_;
  bytes = std::clamp<std::int64_t>(bytes, 0, b.capacity_);
  std::unique_lock<std::mutex> lock(b.mutex_);
  if (bytes > held_) {
    // A holder that waits keeps what it holds; when every holder waits, nobody would ever release, so one of
    // them (whichever wakes first) goes ahead.
    const bool holding = held_ > 0;
    if (holding) ++b.stuck_;
    b.changed_.wait(lock, [&] {
      return b.used_ - held_ + bytes <= b.capacity_ || (holding && b.stuck_ == b.holders_);
    });
    if (holding) --b.stuck_;
  }
  b.holders_ += (bytes > 0 ? 1 : 0) - (held_ > 0 ? 1 : 0);
  b.used_ += bytes - held_;
  held_ = bytes;
  b.peak_ = std::max(b.peak_, b.used_);
  b.changed_.notify_all();
}

MemoryBudget& default_decode_budget() {
  static MemoryBudget budget(limits::decode_memory);
  return budget;
}

}  // namespace dgs
