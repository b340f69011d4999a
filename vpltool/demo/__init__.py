"""The demo world: procedurally rendered scenes with exact masks and captions, for end-to-end checks of vpltool."""
