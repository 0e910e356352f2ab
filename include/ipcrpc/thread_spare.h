// One object a thread keeps for its next use (a cleared message, a block of
// memory), so that a hot path that makes and drops one per call allocates
// nothing once warm, and the thread_local under it that knows when the
// thread's exit has destroyed it. Internal: what the generated code and the
// library use (ipcrpc/message_body.h, ipcrpc/scratch.h,
// transports/read_watch.h), not part of the API.
#ifndef IPCRPC_THREAD_SPARE_H_
#define IPCRPC_THREAD_SPARE_H_

#include <utility>

namespace ipcrpc::internal {

// This thread's `T` for `Tag`, made on first use, or null once the thread
// has begun to destroy it (a use from another thread_local's destructor
// or, on the main thread, a static's): the caller then does without.
template <typename T, typename Tag>
class ThreadLocalUntilExit {
 public:
  static T* Get() { return Gone() ? nullptr : &Kept().value; }

 private:
  struct Kept_ {
    T value;
    ~Kept_() { Gone() = true; }
  };
  static Kept_& Kept() {
    thread_local Kept_ kept;
    return kept;
  }
  // Trivially destructible, so still there while the thread's other
  // thread_locals are destroyed.
  static bool& Gone() {
    thread_local bool gone = false;
    return gone;
  }
};

// The spare of type `Ptr` (an owning pointer) that each thread keeps for
// `Tag`. During the thread's exit, once the spare is gone, there is none
// and no room for one: the caller allocates and frees as if there were no
// spare.
template <typename Ptr, typename Tag>
class ThreadSpare {
 public:
  // The thread's spare, taken (null if it has none).
  static Ptr Take() {
    Ptr* spare = Slot::Get();
    return spare == nullptr ? Ptr() : std::move(*spare);
  }
  // Where to put a spare, or null: the thread has one already, or is
  // exiting (then the caller frees what it would have kept).
  static Ptr* Room() {
    Ptr* spare = Slot::Get();
    return spare == nullptr || *spare ? nullptr : spare;
  }

 private:
  using Slot = ThreadLocalUntilExit<Ptr, Tag>;
};

}  // namespace ipcrpc::internal

#endif  // IPCRPC_THREAD_SPARE_H_
