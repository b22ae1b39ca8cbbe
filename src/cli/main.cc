// Entry point of the `vaultp11` admin tool; the commands live in commands.cc.
#include <sys/stat.h>
#include <unistd.h>

#include <iostream>

#include "cli/commands.h"
#include "cli/store_cmds.h"

int main(int argc, char** argv) {
  // Everything this tool creates (store, master key, directories) is private to its owner.
  umask(077);
  vaultp11::cli::Io io{std::cin, std::cout, std::cerr, isatty(STDIN_FILENO) == 1};
  if (vaultp11::cli::IsStoreCommand(argc, argv)) return vaultp11::cli::RunStoreCommand(argc, argv, io);
  return vaultp11::cli::Run(argc, argv, io);
}
