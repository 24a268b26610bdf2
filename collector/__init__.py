"""Beacon collector: answers tracking-pixel requests and turns them into events."""
