// A memory budget shared by threads that decode images, as dgs_sdk/memory.py: eight workers meeting eight large
// images take turns instead of taking eight times the memory.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace dgs {

// Bytes that concurrent work may hold together.
//
// Each piece of work holds one Reservation and grows it as it learns what it needs (the file's size, then what its
// header says decoding takes), keeping what it holds while it waits for more. Should every holder be waiting to
// grow, none could ever release: then one of them goes ahead past the budget (by one image's share at most, and
// only until a holder finishes), so there is never a deadlock. A request larger than the whole budget is cut to
// the budget. peak() records the most ever reserved at once.
class MemoryBudget {
 public:
  // Throws Error(invalid_argument) for a capacity below 1.
  explicit MemoryBudget(std::int64_t capacity);
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  std::int64_t capacity() const noexcept { return capacity_; }
  std::int64_t used() const;
  std::int64_t peak() const;

 private:
  friend class Reservation;
  const std::int64_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::int64_t used_ = 0;
  std::int64_t peak_ = 0;
  std::int64_t holders_ = 0;  // reservations holding bytes
  std::int64_t stuck_ = 0;    // of those, the ones waiting to grow
};

// The share of a MemoryBudget one piece of work holds; given back when it is destroyed.
class Reservation {
 public:
  explicit Reservation(MemoryBudget& budget, std::int64_t bytes = 0);
  ~Reservation();
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;

  // Hold `bytes` from now on: shrinking is immediate, growing waits for the budget (holding on).
  void resize(std::int64_t bytes);
  std::int64_t held() const noexcept { return held_; }

 private:
  MemoryBudget& budget_;
  std::int64_t held_ = 0;
};

// The budget of DGS decodes in this process (dgs::limits::decode_memory bytes), when no other is given.
MemoryBudget& default_decode_budget();

}  // namespace dgs
