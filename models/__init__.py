"""SQLModel tables, the status vocabulary and transition tables, the store, and the migrations."""
