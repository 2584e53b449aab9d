# Where state and artifacts live: Firestore (all documents), the blob bucket, the Artifact
# Registry repository, and the bucket cloudbuild.yaml's sources are staged in.

resource "google_firestore_database" "store" {
  project                 = var.project_id
  name                    = var.firestore_database
  location_id             = coalesce(var.firestore_location, var.region)
  type                    = "FIRESTORE_NATIVE"
  delete_protection_state = var.deletion_protection ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  # `terraform destroy` leaves the data unless deletion_protection is off.
  deletion_policy = var.deletion_protection ? "ABANDON" : "DELETE"

  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "blobs" {
  project                     = var.project_id
  name                        = local.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !var.deletion_protection
  labels                      = local.labels

  # The janitor prunes build logs and snapshots with their builds; this catches the rest.
  lifecycle_rule {
    condition {
      age = var.blob_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# `gcloud builds submit --gcs-source-staging-dir=gs://<this>/source` uploads DevGem's source here
# for cloudbuild.yaml, which runs as the release account (it may read this bucket only).
resource "google_storage_bucket" "cloudbuild_sources" {
  project                     = var.project_id
  name                        = "${local.bucket_name}-src"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = local.labels

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# DevGem's image is <repo>/devgem; users' images are <repo>/apps/<owner>/<service>.
resource "google_artifact_registry_repository" "images" {
  project       = var.project_id
  location      = var.region
  repository_id = var.artifact_repository_id
  description   = "DevGem's own image (devgem) and users' app images (apps/<owner>/<service>)"
  format        = "DOCKER"
  labels        = local.labels

  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "delete-old-untagged"
    action = "DELETE"
    condition {
      tag_state  = "UNTAGGED"
      older_than = "${var.untagged_image_retention_days * 86400}s"
    }
  }

  depends_on = [google_project_service.apis]
}
