"""The lab's ``workzone train`` commands: one function per command, registered by entry point."""
