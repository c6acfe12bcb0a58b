// "Swap the SlidingWindow first": this program links the drop-in's SlidingWindow with its OWN
// tcpx_test / tcpx_irecv_consumed — a stand-in for the C++ tree's tcpx_impl.cc, with requests
// that are raw pointers — exactly as a tree that replaced only sliding_window.h would. That it
// links at all shows the library pulls none of its own tcpx_* wrappers in for the window; the
// checks show the window drives whatever wrappers are linked, with the tree's return codes.
#include <cstdio>
#include <vector>

#include "sliding_window.h"
#include "tcpx/status.h"

namespace {

int g_failures = 0;
#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      ++g_failures;                                                    \
      std::printf("  FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                  \
  } while (0)

/// A request of the stand-in plugin: done after `polls` tests, or a fixed rc.
struct MockReq {
  int id = 0;
  int polls = 1;
  int rc = 0;         // returned by every test while non-zero
  int done_with_rc = 0;
  bool done = false;
  bool consumed = false;
};

std::vector<int> g_consumed;
int g_tests = 0;

}  // namespace

extern "C" int tcpx_test(void* request, int* done, int* size) {
  (void)size;
  ++g_tests;
  auto* r = static_cast<MockReq*>(request);
  if (r->rc != 0) {
    *done = r->done_with_rc;
    return r->rc;
  }
  if (!r->done && --r->polls <= 0) r->done = true;
  *done = r->done ? 1 : 0;
  return 0;
}

extern "C" int tcpx_irecv_consumed(void* comm, int n, void* request) {
  (void)comm;
  auto* r = static_cast<MockReq*>(request);
  if (n != 1 || !r->done || r->consumed) return 3;
  r->consumed = true;
  g_consumed.push_back(r->id);
  return 0;
}

int main() {
  void* comm = reinterpret_cast<void*>(0x1000);  // the tree's comms are plugin pointers
  using tcpx::Status;

  // A send window of 12, like the tree's clients: the 13th add is refused.
  {
    std::vector<MockReq> reqs(13);
    SlidingWindow w(12);
    for (int i = 0; i < 12; ++i) {
      reqs[i].id = i;
      reqs[i].polls = 2;
      CHECK(w.add_request(&reqs[i], i) == 0);
    }
    CHECK(w.is_full());
    CHECK(w.add_request(&reqs[12], 12) == -1);
    CHECK(w.last_status() == Status::Busy);
    CHECK(w.try_release_oldest(comm, false) == 1);  // first test: not done yet
    CHECK(w.try_release_oldest(comm, false) == 0);  // second: done, released
    CHECK(w.size() == 11);
    CHECK(w.drain_all(comm, false) == 0);
    CHECK(w.size() == 0);
    CHECK(g_consumed.empty());  // sends are never consumed
    CHECK(w.try_release_oldest(comm, true) == 0);  // empty window: nothing to do
  }

  // A receive window: FIFO consumes, "not your turn" (rc 3) is 1, a dead peer is -1.
  {
    std::vector<MockReq> reqs(17);
    SlidingWindow w(16);
    for (int i = 0; i < 16; ++i) {
      reqs[i].id = i;
      CHECK(w.add_request(&reqs[i], i) == 0);
    }
    CHECK(w.add_request(&reqs[16], 16) == -1);  // the tree silently took a 17th
    reqs[0].rc = 3;                             // "test called with invalid request"
    CHECK(w.try_release_oldest(comm, true) == 1);
    CHECK(w.last_status() == Status::NotReady);
    reqs[0].rc = 0;
    CHECK(w.try_release_oldest(comm, true) == 0);
    CHECK(w.try_release_oldest(comm, false) == -1);  // the direction is fixed
    CHECK(w.last_status() == Status::InvalidArgument);
    reqs[1].rc = 2;  // peer closed after this request completed (done = 1): released
    reqs[1].done_with_rc = 1;
    reqs[1].done = true;
    CHECK(w.try_release_oldest(comm, true) == 0);
    reqs[2].rc = 2;  // peer closed, not done: an error, not "not ready" forever
    CHECK(w.try_release_oldest(comm, true) == -1);
    CHECK(w.last_status() == Status::PeerClosed);
    CHECK(w.drain_all(comm, true) == -1);
    reqs[2].rc = 0;
    CHECK(w.drain_all(comm, true) == 0);
    CHECK(g_consumed.size() == 16);
    for (size_t i = 0; i < g_consumed.size(); ++i) CHECK(g_consumed[i] == static_cast<int>(i));
  }

  // NULL requests are refused.
  {
    SlidingWindow w(4);
    CHECK(w.add_request(nullptr, 0) == -1);
    CHECK(w.last_status() == Status::InvalidArgument);
  }

  std::printf("%d tests of the stand-in plugin, %zu consumed\n", g_tests, g_consumed.size());
  if (g_failures == 0) std::printf("ALL PASSED\n");
  return g_failures == 0 ? 0 : 1;
}
