"""Test doubles: the loopback fake of the OpenAI/Anthropic APIs (fake_llm)."""
