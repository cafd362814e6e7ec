"""Warranty bot core and shell: messages, conversation, engine, outbox, desk, render, storage, server, CLI."""
