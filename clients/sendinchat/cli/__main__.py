"""`python -m sendinchat.cli`: the same as `sendinchat-cli`."""

from sendinchat.cli import main

main()
