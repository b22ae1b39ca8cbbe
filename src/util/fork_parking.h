// ForkParking keeps the module's worker threads (the audit writer, the pools' health checks)
// from holding a lock across fork() (README "PKCS#11 conformance notes", Fork). Each tracked
// object's thread does all its work under one of two mutexes; the pthread_atfork prepare
// handler takes both, for every tracked object, so at the fork each such thread is parked
// waiting for one of them or sleeping on a condition variable, holding nothing (inside no sink,
// inner module, OpenSSL or allocator call). Parent and child release them; the child never
// runs the parent's threads (its module is set aside).
#pragma once

#include <pthread.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace vaultp11 {

// T's thread works under `Outer`, then `Inner` (taken in that order at a fork); T calls Track
// before its thread may hold them and Forget once it is gone (never from under either).
template <typename T, std::mutex T::*Outer, std::mutex T::*Inner>
class ForkParking {
 public:
  static void Track(T* t) {
    static std::once_flag once;
    std::call_once(once, [] { pthread_atfork(&Prepare, &Release, &Release); });
    std::lock_guard<std::mutex> l(Mu());
    auto& list = List();
    if (std::find(list.begin(), list.end(), t) == list.end()) list.push_back(t);
  }
  static void Forget(T* t) {
    std::lock_guard<std::mutex> l(Mu());
    auto& list = List();
    list.erase(std::remove(list.begin(), list.end(), t), list.end());
  }

 private:
  // Never destroyed: the handlers may run while the process exits.
  static std::mutex& Mu() {
    static auto* mu = new std::mutex;
    return *mu;
  }
  static std::vector<T*>& List() {
    static auto* list = new std::vector<T*>;
    return *list;
  }
  static void Prepare() {
    Mu().lock();
    for (T* t : List()) {
      (t->*Outer).lock();
      (t->*Inner).lock();
    }
  }
  static void Release() {
    auto& list = List();
    for (auto it = list.rbegin(); it != list.rend(); ++it) {
      ((*it)->*Inner).unlock();
      ((*it)->*Outer).unlock();
    }
    Mu().unlock();
  }
};

}  // namespace vaultp11
