// C++ unit tests of the drop-in headers, over tcpx-sim on loopback (UCCL_TCPX_PLUGIN_PATH).
// Each misuse must come back as the documented return code / status, and the process must go
// on: this binary runs every case in one process and prints "ALL PASSED" at the end.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../src/gpu_wait.h"  // the glue's GPU wait policy, header-only
#include "bootstrap.h"
#include "channel_manager.h"
#include "sliding_window.h"
#include "tcpx/endpoint.h"
#include "tcpx/status.h"
#include "tcpx_handles.h"
#include "tcpx_interface.h"
#include "test_common.h"
#include "unpack_launch.h"

using tcpx::Status;
using namespace tcpx_programs;

namespace {

int g_failures = 0;
int g_checks = 0;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    ++g_checks;                                                                      \
    if (!(cond)) {                                                                   \
      ++g_failures;                                                                  \
      std::printf("  FAILED %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond, \
                  tcpx_last_error());                                                \
    }                                                                                \
  } while (0)

#define CHECK_EQ(a, b) CHECK((a) == (b))

Status last() { return static_cast<Status>(tcpx_last_status()); }

int port_base() { return static_cast<int>(env_int("TCPX_TEST_PORT_BASE", 39000)); }

/// A connected loopback pair on device 0 (connect on a thread: TCPX's connect completes only
/// once the peer accepted).
struct Pair {
  void* send = nullptr;
  void* recv = nullptr;
  alignas(16) unsigned char dev_handle[512] = {};
  bool ok = false;

  Pair() {
    ncclNetHandle_v7 handle;
    void* listen = nullptr;
    if (tcpx_listen(0, &handle, &listen) != 0) return;
    int connect_rc = -1;
    std::thread t([&] {
      void* sdh = nullptr;
      connect_rc = tcpx_connect_v5(0, &handle, &send, &sdh);
    });
    void* dh = dev_handle;
    int accept_rc = tcpx_accept_v5(listen, &recv, &dh);
    t.join();
    tcpx_close_listen(listen);
    ok = connect_rc == 0 && accept_rc == 0 && send != nullptr && recv != nullptr;
  }
  ~Pair() {
    if (send != nullptr) tcpx_close_send(send);
    if (recv != nullptr) tcpx_close_recv(recv);
  }
};

struct HostMem {
  Buffer b;
  explicit HostMem(uint64_t n) { b.alloc(n, false); }
  unsigned char* p() { return static_cast<unsigned char*>(b.ptr); }
};

/// Tests `req` until done or an error; returns the last rc.
int wait_done(void* req, int* size = nullptr) {
  int done = 0;
  for (int i = 0; i < 5000000; ++i) {
    int rc = tcpx_test(req, &done, size);
    if (rc != 0 || done) return rc;
    std::this_thread::yield();
  }
  return -100;
}

void test_status_names() {
  CHECK(std::strcmp(tcpx::status_name(Status::NotHead), "NotHead") == 0);
  CHECK(std::strcmp(tcpx::status_name(static_cast<Status>(99)), "Unknown") == 0);
}

/// A scripted GpuQuery: not ready for `not_ready` queries, then `then` (done, or an error).
struct ScriptedQuery {
  int not_ready = 0;
  int then = tcpx::detail::kGpuDone;
  int queries = 0;
};

int scripted_query(void* arg) {
  auto* q = static_cast<ScriptedQuery*>(arg);
  ++q->queries;
  return q->queries > q->not_ready ? q->then : tcpx::detail::kGpuNotReady;
}

void test_gpu_wait_policy() {
  using std::chrono::milliseconds;
  using tcpx::detail::kGpuDone;
  using tcpx::detail::kGpuTimedOut;
  using tcpx::detail::wait_until_done;
  const int spins = static_cast<int>(tcpx::detail::kGpuWaitSpins);
  ScriptedQuery at_once;
  CHECK_EQ(wait_until_done(&scripted_query, &at_once, milliseconds(0)), kGpuDone);
  CHECK_EQ(at_once.queries, 1);
  // Past the spins and many clock reads, within a long deadline.
  ScriptedQuery later{1000};
  CHECK_EQ(wait_until_done(&scripted_query, &later, milliseconds(60000)), kGpuDone);
  CHECK_EQ(later.queries, 1001);
  // The deadline counts from the first clock read (query 64) and is checked at every 64th
  // query: even a zero deadline lets work done by query 128 finish, and ends at exactly 128.
  ScriptedQuery just_in_time{2 * spins - 1};
  CHECK_EQ(wait_until_done(&scripted_query, &just_in_time, milliseconds(0)), kGpuDone);
  ScriptedQuery zero{INT_MAX};
  CHECK_EQ(wait_until_done(&scripted_query, &zero, milliseconds(0)), kGpuTimedOut);
  CHECK_EQ(zero.queries, 2 * spins);
  // Never done: the deadline ends it, after more than the spins.
  ScriptedQuery never{INT_MAX};
  CHECK_EQ(wait_until_done(&scripted_query, &never, milliseconds(20)), kGpuTimedOut);
  CHECK(never.queries > spins);
  // A failing query ends the wait at once with its own error.
  ScriptedQuery failing{2, 700};
  CHECK_EQ(wait_until_done(&scripted_query, &failing, milliseconds(60000)), 700);
  CHECK_EQ(failing.queries, 3);
}

void test_null_and_bogus_handles() {
  int done = 7, size = 0;
  void* req = reinterpret_cast<void*>(0x1);
  char data[64];
  CHECK_EQ(tcpx_isend(nullptr, data, 64, 0, nullptr, &req), -1);
  CHECK_EQ(last(), Status::InvalidArgument);
  CHECK(req == nullptr);
  CHECK_EQ(tcpx_test(nullptr, &done, &size), -1);
  CHECK_EQ(done, 0);
  CHECK_EQ(tcpx_test(data, &done, &size), -1);  // a real pointer is never a request
  CHECK_EQ(tcpx_test(req, nullptr, nullptr), -1);
  CHECK_EQ(tcpx_close_send(nullptr), -1);
  CHECK_EQ(tcpx_close_recv(data), -1);
  CHECK_EQ(tcpx_irecv_consumed(nullptr, 1, nullptr), -1);
  void* mh = nullptr;
  CHECK_EQ(tcpx_reg_mr(nullptr, data, 64, NCCL_PTR_HOST, &mh), -1);
  CHECK_EQ(tcpx_listen(0, nullptr, nullptr), -1);
  CHECK_EQ(tcpx_accept_v5(nullptr, nullptr, nullptr), -1);
  void* rc = nullptr;
  CHECK_EQ(tcpx_accept_v5(data, &rc, nullptr), -1);
  CHECK(std::strlen(tcpx_last_error()) > 0);
  CHECK(tcpx_get_device_count() >= 1);
  tcpx_net_properties props;
  CHECK_EQ(tcpx_get_properties(0, &props), 0);
  CHECK(props.name != nullptr);
  CHECK(tcpx_get_properties(1000, &props) != 0);
  CHECK_EQ(tcpx_get_properties(0, nullptr), -1);
}

void test_transfer_and_misuse() {
  Pair a;
  CHECK(a.ok);
  if (!a.ok) return;
  auto* dh = reinterpret_cast<tcpx_net_device_handle*>(a.dev_handle);
  CHECK(dh->size == 0 || dh->size == 24);

  HostMem src(1 << 20), dst(1 << 20);
  fill_pattern(src.p(), 1 << 20, 42);
  void *smh = nullptr, *rmh = nullptr;
  CHECK_EQ(tcpx_reg_mr(a.send, src.p(), 1 << 20, NCCL_PTR_HOST, &smh), 0);
  CHECK_EQ(tcpx_reg_mr(a.recv, dst.p(), 1 << 20, NCCL_PTR_HOST, &rmh), 0);
  void* bad_mh = reinterpret_cast<void*>(0x1);
  CHECK_EQ(tcpx_reg_mr(a.send, src.p(), 1 << 20, 7, &bad_mh), -1);  // neither HOST nor CUDA
  CHECK(bad_mh == nullptr);
  CHECK_EQ(tcpx_reg_mr(a.send, nullptr, 4096, NCCL_PTR_HOST, &bad_mh), -1);

  // Wrong comm kinds and foreign handles.
  void* req = nullptr;
  int tag = 0;
  int len = 4096;
  void* d = dst.p();
  CHECK_EQ(tcpx_isend(a.recv, src.p(), 4096, 0, smh, &req), -1);
  CHECK_EQ(tcpx_irecv(a.send, 1, &d, &len, &tag, &rmh, &req), -1);
  CHECK_EQ(tcpx_isend(a.send, src.p(), 4096, 0, rmh, &req), -1);  // mhandle of the recv comm
  CHECK_EQ(last(), Status::InvalidArgument);
  CHECK_EQ(tcpx_isend(a.send, src.p() + (1 << 20), 4096, 0, smh, &req), -1);  // out of range
  CHECK_EQ(tcpx_irecv(a.recv, 2, &d, &len, &tag, &rmh, &req), -1);           // n != 1

  // 16 receives are fine; the 17th is refused with TCPX's rc 3 (Busy), before the plugin.
  std::vector<void*> reqs;
  const int chunk = 1 << 16;
  for (int i = 0; i < 16; ++i) {
    void* p = dst.p() + i * chunk;
    int n = chunk;
    void* r = nullptr;
    CHECK_EQ(tcpx_irecv(a.recv, 1, &p, &n, &tag, &rmh, &r), 0);
    reqs.push_back(r);
  }
  CHECK_EQ(tcpx_comm_outstanding(a.recv), 16);
  for (int i = 0; i < 16; ++i) CHECK_EQ(tcpx_request_unpack_slot(reqs[i]), i);
  CHECK_EQ(tcpx_request_unpack_slot(nullptr), -1);
  {
    void* p = dst.p();
    int n = chunk;
    void* r = reinterpret_cast<void*>(0x5);
    CHECK_EQ(tcpx_irecv(a.recv, 1, &p, &n, &tag, &rmh, &r), 3);
    CHECK_EQ(last(), Status::Busy);
    CHECK(r == nullptr);
  }
  // A window refuses the 17th too.
  SlidingWindow w(16);
  for (int i = 0; i < 16; ++i) CHECK_EQ(w.add_request(reqs[i], i), 0);
  CHECK(w.is_full());
  CHECK_EQ(w.add_request(reqs[0], 16), -1);
  CHECK_EQ(w.last_status(), Status::Busy);
  CHECK_EQ(w.size(), 16);

  // Test of a request that is not the head: rc 3, NotHead. Consume before done: rc 3, NotDone.
  int done = 0, size = 0;
  CHECK_EQ(tcpx_test(reqs[1], &done, &size), 3);
  CHECK_EQ(last(), Status::NotHead);
  CHECK_EQ(tcpx_irecv_consumed(a.recv, 1, reqs[0]), 3);
  CHECK_EQ(last(), Status::NotDone);
  CHECK_EQ(tcpx_irecv_consumed(a.recv, 2, reqs[0]), -1);
  CHECK_EQ(tcpx_irecv_consumed(a.send, 1, reqs[0]), -1);  // not its comm

  // Nothing sent yet: the head is not ready.
  CHECK_EQ(w.try_release_oldest(a.recv, true), 1);
  CHECK_EQ(w.try_release_oldest(a.send, false), -1);  // a send comm for a receive window

  // Send the 16 chunks; the window drains, consuming in FIFO order.
  SlidingWindow sw(12);
  for (int i = 0; i < 16; ++i) {
    while (sw.is_full()) CHECK(sw.try_release_oldest(a.send, false) >= 0);
    void* s = nullptr;
    CHECK_EQ(tcpx_isend(a.send, src.p() + i * chunk, chunk, i, smh, &s), 0);
    CHECK_EQ(sw.add_request(s, i), 0);
    w.try_release_oldest(a.recv, true);
  }
  CHECK_EQ(sw.drain_all(a.send, false), 0);
  CHECK_EQ(w.drain_all(a.recv, true), 0);
  CHECK_EQ(w.size(), 0);
  CHECK_EQ(tcpx_comm_outstanding(a.recv), 0);
  CHECK_EQ(check_pattern(dst.p(), 1 << 20, 42), -1);
  CHECK_EQ(w.try_release_oldest(a.recv, true), 0);  // empty: nothing to do
  // Finished requests are gone: testing one again is refused, not undefined.
  CHECK_EQ(tcpx_test(reqs[0], &done, &size), -1);
  CHECK_EQ(tcpx_irecv_consumed(a.recv, 1, reqs[0]), -1);

  // Deregistration is refused while requests are pending.
  void* r = nullptr;
  void* p = dst.p();
  int n = chunk;
  CHECK_EQ(tcpx_irecv(a.recv, 1, &p, &n, &tag, &rmh, &r), 0);
  CHECK_EQ(tcpx_dereg_mr(a.recv, rmh), -1);
  CHECK_EQ(last(), Status::Busy);
  void* s = nullptr;
  CHECK_EQ(tcpx_isend(a.send, src.p(), chunk, 0, smh, &s), 0);
  CHECK_EQ(wait_done(s), 0);
  CHECK_EQ(wait_done(r, &size), 0);
  CHECK_EQ(size, chunk);
  CHECK_EQ(tcpx_irecv_consumed(a.recv, 1, r), 0);
  CHECK_EQ(tcpx_dereg_mr(a.recv, rmh), 0);
  CHECK_EQ(tcpx_dereg_mr(a.recv, rmh), -1);
  CHECK_EQ(tcpx_dereg_mr(a.send, smh), 0);

  // Closed comms: every later call is refused, a second close too.
  void* send = a.send;
  a.send = nullptr;
  CHECK_EQ(tcpx_close_send(send), 0);
  CHECK_EQ(tcpx_close_send(send), -1);
  CHECK_EQ(tcpx_isend(send, src.p(), 64, 0, smh, &s), -1);
  CHECK_EQ(tcpx_comm_outstanding(send), -1);
  CHECK_EQ(tcpx_close_recv(send), -1);
}

void test_dead_peer() {
  Pair a;
  CHECK(a.ok);
  if (!a.ok) return;
  HostMem dst(1 << 16);
  void* rmh = nullptr;
  CHECK_EQ(tcpx_reg_mr(a.recv, dst.p(), 1 << 16, NCCL_PTR_HOST, &rmh), 0);
  SlidingWindow w(16);
  void* first = nullptr;
  for (int i = 0; i < 2; ++i) {
    void* p = dst.p() + i * 4096;
    int n = 4096, tag = 0;
    void* r = nullptr;
    CHECK_EQ(tcpx_irecv(a.recv, 1, &p, &n, &tag, &rmh, &r), 0);
    CHECK_EQ(w.add_request(r, i), 0);
    if (i == 0) first = r;
  }
  // The peer goes away with receives outstanding: test says rc 2 (PeerClosed) ...
  CHECK_EQ(tcpx_close_send(a.send), 0);
  a.send = nullptr;
  int done = 0;
  int rc = 0;
  for (int i = 0; i < 5000000 && rc == 0; ++i) rc = tcpx_test(first, &done, nullptr);
  CHECK_EQ(rc, 2);
  CHECK_EQ(done, 0);
  CHECK_EQ(last(), Status::PeerClosed);
  // ... and the window's drain ends with -1, PeerClosed, instead of spinning on "not ready".
  setenv("UCCL_TCPX_DRAIN_TIMEOUT_MS", "20000", 1);
  CHECK_EQ(w.drain_all(a.recv, true), -1);
  CHECK_EQ(w.last_status(), Status::PeerClosed);
  unsetenv("UCCL_TCPX_DRAIN_TIMEOUT_MS");
  w.clear();
  CHECK_EQ(w.size(), 0);
  // The process goes on: a fresh pair still works.
  Pair b;
  CHECK(b.ok);
}

struct EventLog {
  void* recv = nullptr;
  std::vector<void*> events;
  std::vector<int> outstanding_at_wait;
  std::vector<int> unpacked_chunks;
};

int log_wait(void* event, void* user) {
  auto* log = static_cast<EventLog*>(user);
  log->events.push_back(event);
  log->outstanding_at_wait.push_back(tcpx_comm_outstanding(log->recv));
  return 0;
}

int log_unpack(void* request, int chunk, void** event, void* user) {
  auto* log = static_cast<EventLog*>(user);
  int done = 0;
  // The receive is done (test says so again without the plugin) and not consumed yet.
  if (tcpx_test(request, &done, nullptr) != 0 || !done) return -1;
  log->unpacked_chunks.push_back(chunk);
  *event = reinterpret_cast<void*>(static_cast<uintptr_t>(0xE000 + chunk));
  return 0;
}

int failing_wait(void*, void*) { return -1; }

void test_window_events_and_unpack_hook() {
  CHECK_EQ(([] {
             try {
               SlidingWindow bad(17);
               return 0;
             } catch (const std::invalid_argument&) {
               return 1;
             }
           })(),
           1);
  CHECK_EQ(([] {
             try {
               SlidingWindow bad(0);
               return 0;
             } catch (const std::invalid_argument&) {
               return 1;
             }
           })(),
           1);

  Pair a;
  CHECK(a.ok);
  if (!a.ok) return;
  HostMem src(1 << 16), dst(1 << 16);
  fill_pattern(src.p(), 1 << 16, 9);
  void *smh = nullptr, *rmh = nullptr;
  CHECK_EQ(tcpx_reg_mr(a.send, src.p(), 1 << 16, NCCL_PTR_HOST, &smh), 0);
  CHECK_EQ(tcpx_reg_mr(a.recv, dst.p(), 1 << 16, NCCL_PTR_HOST, &rmh), 0);

  EventLog log;
  log.recv = a.recv;
  SlidingWindow w(4, &log_wait, &log);
  w.set_unpack_hook(&log_unpack, &log);
  const int chunk = 4096;
  for (int i = 0; i < 4; ++i) {
    void* p = dst.p() + i * chunk;
    int n = chunk, tag = 0;
    void* r = nullptr;
    CHECK_EQ(tcpx_irecv(a.recv, 1, &p, &n, &tag, &rmh, &r), 0);
    // Chunk 1 brings its own event; the others get theirs from the unpack hook.
    tcpx::event_t ev = i == 1 ? reinterpret_cast<tcpx::event_t>(0xAB) : nullptr;
    CHECK_EQ(w.add_request(r, i, ev), 0);
    void* s = nullptr;
    CHECK_EQ(tcpx_isend(a.send, src.p() + i * chunk, chunk, 0, smh, &s), 0);
    CHECK_EQ(wait_done(s), 0);
  }
  CHECK_EQ(w.drain_all(a.recv, true), 0);
  CHECK_EQ(check_pattern(dst.p(), 4 * chunk, 9), -1);
  CHECK_EQ(log.unpacked_chunks.size(), 3u);
  CHECK_EQ(log.events.size(), 4u);
  if (log.events.size() == 4) {
    CHECK(log.events[0] == reinterpret_cast<void*>(0xE000));
    CHECK(log.events[1] == reinterpret_cast<void*>(0xAB));
    CHECK(log.events[3] == reinterpret_cast<void*>(0xE003));
  }
  // Each wait came before its consume: the receive was still outstanding.
  for (int o : log.outstanding_at_wait) CHECK(o >= 1);

  // A failing event wait is -1 and leaves the receive in the window.
  SlidingWindow bad(2, &failing_wait, nullptr);
  void* p = dst.p();
  int n = chunk, tag = 0;
  void* r = nullptr;
  CHECK_EQ(tcpx_irecv(a.recv, 1, &p, &n, &tag, &rmh, &r), 0);
  CHECK_EQ(bad.add_request(r, 0, reinterpret_cast<tcpx::event_t>(0xCD)), 0);
  void* s = nullptr;
  CHECK_EQ(tcpx_isend(a.send, src.p(), chunk, 0, smh, &s), 0);
  CHECK_EQ(wait_done(s), 0);
  int rel = 1;
  for (int i = 0; i < 1000000 && rel == 1; ++i) rel = bad.try_release_oldest(a.recv, true);
  CHECK_EQ(rel, -1);
  CHECK_EQ(bad.size(), 1);
  CHECK_EQ(tcpx_comm_outstanding(a.recv), 1);
}

void test_channel_manager() {
  ChannelManager server(2, 0);
  CHECK_EQ(server.get_num_channels(), 2);
  std::vector<ncclNetHandle_v7> handles;
  CHECK_EQ(server.server_listen_all(handles), 0);
  CHECK_EQ(handles.size(), 2u);
  ChannelManager client(2, 0);
  int connect_rc = -1;
  std::thread t([&] { connect_rc = client.client_connect_all(handles); });
  CHECK_EQ(server.server_accept_all(), 0);
  t.join();
  CHECK_EQ(connect_rc, 0);
  bool threw = false;
  try {
    server.get_channel(5);
  } catch (const std::out_of_range&) {
    threw = true;
  }
  CHECK(threw);
  threw = false;
  try {
    server.get_channel_for_chunk(-1);
  } catch (const std::out_of_range&) {
    threw = true;
  }
  CHECK(threw);
  CHECK_EQ(&server.get_channel_for_chunk(3), &server.get_channel(1));
  std::vector<ncclNetHandle_v7> one(1);
  CHECK_EQ(client.client_connect_all(one), -1);  // count mismatch

  HostMem src(1 << 20), dst(1 << 20);
  fill_pattern(src.p(), 1 << 20, 5);
  CHECK_EQ(server.register_memory(dst.p(), 1 << 20, NCCL_PTR_HOST, true), 0);
  CHECK_EQ(client.register_memory(src.p(), 1 << 20, NCCL_PTR_HOST, false), 0);
  const int chunk = 1 << 17;
  for (int i = 0; i < 8; ++i) {
    ChannelResources& rc = server.get_channel_for_chunk(i);
    ChannelResources& sc = client.get_channel_for_chunk(i);
    void* p = dst.p() + i * chunk;
    int n = chunk, tag = i;
    void* r = nullptr;
    CHECK_EQ(tcpx_irecv(rc.recv_comm, 1, &p, &n, &tag, &rc.mhandle, &r), 0);
    CHECK_EQ(rc.sliding_window->add_request(r, i), 0);
    void* s = nullptr;
    CHECK_EQ(tcpx_isend(sc.send_comm, src.p() + i * chunk, chunk, i, sc.mhandle, &s), 0);
    CHECK_EQ(sc.sliding_window->add_request(s, i), 0);
  }
  for (int c = 0; c < 2; ++c) {
    CHECK_EQ(client.get_channel(c).sliding_window->drain_all(client.get_channel(c).send_comm, false), 0);
    CHECK_EQ(server.get_channel(c).sliding_window->drain_all(server.get_channel(c).recv_comm, true), 0);
  }
  CHECK_EQ(check_pattern(dst.p(), 1 << 20, 5), -1);
  CHECK_EQ(server.deregister_memory(true), 0);
  CHECK_EQ(client.deregister_memory(false), 0);
  client.close_all(false);
  server.close_all(true);
  CHECK(server.get_channel(0).recv_comm == nullptr);

  ChannelManager none(0, 0);  // no channels: every call fails, nothing aborts
  CHECK_EQ(none.get_num_channels(), 0);
  CHECK_EQ(none.server_listen_all(handles), -1);
}

void test_bootstrap() {
  const int port = port_base() + 1;
  std::vector<ncclNetHandle_v7> sent(3);
  for (int i = 0; i < 3; ++i) std::memset(sent[i].data, 'a' + i, sizeof(sent[i].data));
  int server_rc = -1;
  std::thread server([&] {
    int fd = -1;
    if (bootstrap_server_create(port, &fd) != 0) return;
    BootstrapPlan plan;
    plan.gpu = 2;
    plan.chunk_bytes = 4096;
    plan.bytes = 123;
    plan.iters = 4;
    if (bootstrap_server_send_handles(fd, sent, plan) != 0) return;
    if (bootstrap_barrier(fd, 11) != 0) return;
    BootstrapSummary ours, theirs;
    ours.checksum = 77;
    if (bootstrap_finish(fd, ours, &theirs) != 0 || theirs.checksum != 88) return;
    server_rc = bootstrap_close(fd);
  });
  int fd = -1;
  CHECK_EQ(bootstrap_client_connect("127.0.0.1", port, 1, &fd), 0);
  CHECK(fd >= (1 << 30));
  std::vector<ncclNetHandle_v7> got;
  BootstrapPlan plan;
  CHECK_EQ(bootstrap_client_recv_handles(fd, got, &plan), 0);
  CHECK_EQ(got.size(), 3u);
  if (got.size() == 3) CHECK_EQ(got[2].data[127], 'c');
  CHECK_EQ(plan.gpu, 2u);
  CHECK_EQ(plan.iters, 4u);
  CHECK_EQ(bootstrap_barrier(fd, 11), 0);
  BootstrapSummary ours, theirs;
  ours.checksum = 88;
  CHECK_EQ(bootstrap_finish(fd, ours, &theirs), 0);
  CHECK_EQ(theirs.checksum, 77u);
  server.join();
  CHECK_EQ(server_rc, 0);
  CHECK_EQ(bootstrap_close(fd), 0);
  CHECK_EQ(bootstrap_close(fd), -1);
  CHECK_EQ(bootstrap_barrier(fd, 1), -1);
  CHECK_EQ(close(fd), -1);  // not an OS descriptor: close() is a harmless EBADF
  CHECK_EQ(bootstrap_client_connect(nullptr, port, &fd), -1);

  // A peer speaking the C++ tree's raw format (or anything else) is refused, not misread.
  const int port2 = port_base() + 2;
  int garbage_rc = 0;
  std::thread bad_server([&] {
    int sfd = -1;
    garbage_rc = bootstrap_server_create(port2, &sfd);
  });
  int sock = -1;
  for (int i = 0; i < 500 && sock < 0; ++i) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port2));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      sock = s;
    } else {
      close(s);
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  CHECK(sock >= 0);
  uint32_t raw_count = 2;  // the tree's wire format: a host-order count, then handles
  if (sock >= 0) {
    CHECK(write(sock, &raw_count, sizeof(raw_count)) == 4);
    char zeros[16] = {};
    CHECK(write(sock, zeros, sizeof(zeros)) == 16);
  }
  bad_server.join();
  CHECK_EQ(garbage_rc, -1);
  if (sock >= 0) close(sock);
}

void test_endpoint() {
  const int port = port_base() + 3;
  const uint64_t len = 3 << 20;
  HostMem src(len), dst(len);
  fill_pattern(src.p(), len, 77);
  std::atomic<int> server_ok{0};
  std::thread server([&] {
    try {
      tcpx::EndpointConfig cfg;
      cfg.channels = 2;
      cfg.chunk_bytes = 256 << 10;
      tcpx::Endpoint ep(cfg);
      tcpx::ConnectionInfo conn = ep.serve(port, 30000);
      uint32_t buf = ep.register_memory(dst.p(), len);
      ep.barrier(conn.id, 1);
      uint64_t id = 0;
      if (ep.post(conn.id, buf, 0, len, &id) != Status::Ok) return;
      tcpx::TransferResult res;
      if (ep.wait(id, 30000, &res) != Status::Ok || res.bytes != len) return;
      tcpx::RunSummary ours;
      ours.bytes = len;
      ep.finish(conn.id, ours);
      server_ok = 1;
    } catch (const std::exception& e) {
      std::printf("  endpoint server: %s\n", e.what());
    }
  });
  try {
    tcpx::Endpoint ep(tcpx::EndpointConfig{});
    tcpx::ConnectionInfo conn = ep.connect("127.0.0.1", port, len, 1, 30000);
    CHECK_EQ(conn.channels, 2);
    CHECK_EQ(conn.chunk_bytes, 256u << 10);
    uint32_t buf = ep.register_memory(src.p(), len);
    ep.barrier(conn.id, 1);
    uint64_t id = 0;
    tcpx::TransferResult res;
    CHECK_EQ(ep.post(conn.id + 7, buf, 0, len, &id), Status::InvalidArgument);
    CHECK_EQ(ep.post(conn.id, buf + 7, 0, len, &id), Status::InvalidArgument);
    CHECK_EQ(ep.post(conn.id, buf, 1, len, &id), Status::InvalidArgument);  // out of range
    CHECK_EQ(ep.post(conn.id, buf, 0, len, nullptr), Status::InvalidArgument);
    CHECK_EQ(ep.wait(12345, 10, &res), Status::InvalidArgument);
    CHECK_EQ(ep.post(conn.id, buf, 0, len, &id), Status::Ok);
    CHECK_EQ(ep.wait(id, 30000, &res), Status::Ok);
    CHECK_EQ(res.bytes, len);
    CHECK_EQ(ep.wait(id, 10, &res), Status::InvalidArgument);  // already taken
    CHECK_EQ(ep.poll(&res), Status::NotReady);
    tcpx::RunSummary ours;
    ours.bytes = len;
    tcpx::RunSummary theirs = ep.finish(conn.id, ours);
    CHECK_EQ(theirs.bytes, len);
    bool threw = false;
    try {
      ep.register_memory(nullptr, 10);
    } catch (const tcpx::Error& e) {
      threw = e.status() == Status::InvalidArgument;
    }
    CHECK(threw);
    tcpx::Endpoint moved(std::move(ep));
    CHECK_EQ(ep.post(0, 0, 0, 1, &id), Status::InvalidArgument);  // moved-from
  } catch (const std::exception& e) {
    std::printf("  endpoint client: %s\n", e.what());
    CHECK(false);
  }
  server.join();
  CHECK_EQ(server_ok.load(), 1);
  CHECK_EQ(check_pattern(dst.p(), len, 77), -1);

  bool threw = false;
  try {
    tcpx::EndpointConfig cfg;
    cfg.plugin_path = "/nonexistent/libnccl-net.so";
    tcpx::Endpoint ep(cfg);
  } catch (const tcpx::Error&) {
    threw = true;
  }
  CHECK(threw);
}

void test_unpack_host() {
  const uint64_t bounce_len = 4 * 4096;
  std::vector<unsigned char> bounce(bounce_len), dst(8192, 0), expect(8192);
  for (uint64_t i = 0; i < bounce_len; ++i) bounce[i] = static_cast<unsigned char>(i * 7 + 3);
  // Two pages of an 8 KiB chunk, in reverse order in the bounce pool.
  tcpx::LoadMeta metas[2] = {{8192, 4096, 0}, {0, 4096, 4096}};
  std::memcpy(expect.data(), bounce.data() + 8192, 4096);
  std::memcpy(expect.data() + 4096, bounce.data(), 4096);
  auto* block = new tcpx::UnpackDescriptorBlock;
  CHECK_EQ(tcpx::build_descriptor_block(metas, 2, bounce.data(), bounce_len, dst.data(), 8192, block), 0);
  CHECK_EQ(block->total_bytes, 8192u);
  tcpx::UnpackLauncher launcher;
  CHECK_EQ(launcher.launch_host(*block), 0);
  CHECK(std::memcmp(dst.data(), expect.data(), 8192) == 0);
  CHECK_EQ(launcher.stats().bytes, 8192u);
  // A fragment that would write past the chunk is refused before any copy.
  tcpx::LoadMeta past[1] = {{0, 4096, 8000}};
  CHECK_EQ(tcpx::build_descriptor_block(past, 1, bounce.data(), bounce_len, dst.data(), 8192, block), 0);
  CHECK_EQ(launcher.launch_host(*block), -3);
  // Overlapping fragments (a byte written twice) are refused too.
  tcpx::LoadMeta overlap[2] = {{0, 4096, 0}, {4096, 4096, 2048}};
  CHECK_EQ(tcpx::build_descriptor_block(overlap, 2, bounce.data(), bounce_len, dst.data(), 8192, block), 0);
  CHECK_EQ(launcher.validate(*block), -3);
  CHECK_EQ(tcpx::build_descriptor_block(metas, 4000, bounce.data(), bounce_len, dst.data(), 8192, block), -3);
  CHECK_EQ(launcher.stats().errors, 1u);
  delete block;
}

}  // namespace

int main() {
  struct Case {
    const char* name;
    void (*fn)();
  } cases[] = {
      {"status names", test_status_names},
      {"gpu wait policy", test_gpu_wait_policy},
      {"null and bogus handles", test_null_and_bogus_handles},
      {"transfer and misuse (17th request, non-head test, foreign, closed)", test_transfer_and_misuse},
      {"dead peer", test_dead_peer},
      {"window events and unpack hook", test_window_events_and_unpack_hook},
      {"channel manager", test_channel_manager},
      {"bootstrap", test_bootstrap},
      {"endpoint", test_endpoint},
      {"unpack (host)", test_unpack_host},
  };
  for (const auto& c : cases) {
    int before = g_failures;
    std::printf("[ RUN  ] %s\n", c.name);
    std::fflush(stdout);
    c.fn();
    std::printf("[ %s ] %s\n", g_failures == before ? " OK " : "FAIL", c.name);
    std::fflush(stdout);
  }
  std::printf("%d checks, %d failed\n", g_checks, g_failures);
  if (g_failures == 0) std::printf("ALL PASSED\n");
  return g_failures == 0 ? 0 : 1;
}
