"""Generated from protos/sendinchat/v1 by clients/regenerate_stubs.py. Do not edit."""
