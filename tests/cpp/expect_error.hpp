// A check the C++ tests share: a call that must fail with a given status and message.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "dgs/error.hpp"

namespace dgs::testing {

// Runs `f`, expecting a dgs::Error of `status` whose message contains `part`.
template <typename F>
void expect_error(F f, dgs::Status status, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected " << dgs::status_name(status) << " with '" << part << "'";
  } catch (const dgs::Error& e) {
    EXPECT_EQ(e.status(), status) << e.what();
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

}  // namespace dgs::testing
