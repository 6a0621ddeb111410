"""A participant site: uploading its shares for a job, its policy, and its serve daemon."""
