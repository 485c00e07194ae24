"""The Responses API on chat's machinery: its gate, output items, events, stored and background answers."""
