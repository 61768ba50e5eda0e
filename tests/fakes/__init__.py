"""Fakes of remote services that speak their real wire formats."""
