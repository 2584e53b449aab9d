# Composite indexes for the Store's queries that filter on one field and order by another
# (Firestore serves equality-only queries and single-field orders from its automatic indexes).
# Field paths are the Firestore adapter's: `owner` is the document's owner (Scope::Owner),
# `data.<field>` the stored document's own fields (infra/src/gcp/firestore).

# A user's deployments, newest first: `GET /api/deployments` and the chat's list tool.
resource "google_firestore_index" "deployments_by_owner" {
  project    = var.project_id
  database   = google_firestore_database.store.name
  collection = "deployments"

  fields {
    field_path = "owner"
    order      = "ASCENDING"
  }
  fields {
    field_path = "data.created_at"
    order      = "DESCENDING"
  }
}

# One service's deployments, newest first: the janitor's pruning of old revisions.
resource "google_firestore_index" "deployments_by_service" {
  project    = var.project_id
  database   = google_firestore_database.store.name
  collection = "deployments"

  fields {
    field_path = "data.owner"
    order      = "ASCENDING"
  }
  fields {
    field_path = "data.service"
    order      = "ASCENDING"
  }
  fields {
    field_path = "data.created_at"
    order      = "DESCENDING"
  }
}
