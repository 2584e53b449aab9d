variable "project_id" {
  description = "The GCP project DevGem runs in (GOOGLE_CLOUD_PROJECT of every function). A project of its own is best: users' Cloud Run services are created in it too."
  type        = string
}

variable "region" {
  description = "The region of the Cloud Run services and job, the Artifact Registry repository, the bucket and Cloud Scheduler."
  type        = string
  default     = "us-central1"
}

variable "name_prefix" {
  description = "Prefix of every resource name: services are <prefix>-<function>, service accounts <prefix>-<function>, subscriptions <prefix>-<subscription>. cloudbuild.yaml's _PREFIX must match."
  type        = string
  default     = "devgem"

  validation {
    # Service account ids are 6-30 characters and the longest suffix is "-analyze" (8).
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix: 3-22 lowercase letters, digits and '-', starting with a letter (service account ids are at most 30 characters)."
  }
}

variable "topic_prefix" {
  description = "Prefix of DevGem's Pub/Sub topic names (DEVGEM_TOPIC_PREFIX). Null: \"<name_prefix>-\". The cloud-builds topic is never prefixed: Cloud Build publishes to that name."
  type        = string
  default     = null
}

variable "image" {
  description = "The DevGem image the services and the janitor job are created with, e.g. <region>-docker.pkg.dev/<project>/devgem/devgem:<sha> (see the README for the first build). Later images are rolled out by cloudbuild.yaml; Terraform ignores image changes after creation so an apply never rolls a service back."
  type        = string
}

variable "artifact_repository_id" {
  description = "The Artifact Registry Docker repository holding DevGem's image (<repo>/devgem) and users' app images (<repo>/apps/<owner>/<service>)."
  type        = string
  default     = "devgem"
}

variable "bucket_name" {
  description = "The Cloud Storage bucket for blobs (DEVGEM_BUCKET: build logs, source snapshots, large generated files). Null: \"<project>-<name_prefix>-blobs\"."
  type        = string
  default     = null
}

variable "blob_retention_days" {
  description = "Blobs older than this are deleted by a lifecycle rule (the janitor prunes earlier; this is the safety net)."
  type        = number
  default     = 90
}

variable "untagged_image_retention_days" {
  description = "Untagged images in the Artifact Registry repository older than this are deleted by a cleanup policy."
  type        = number
  default     = 14
}

variable "firestore_database" {
  description = "The Firestore database (native mode) holding all state (DEVGEM_FIRESTORE_DATABASE). If \"(default)\" already exists in the project, import it first (see terraform/README.md)."
  type        = string
  default     = "(default)"
}

variable "firestore_location" {
  description = "The Firestore location (a region such as us-central1 or a multi-region such as nam5). Null: var.region."
  type        = string
  default     = null
}

variable "deletion_protection" {
  description = "Protects the Firestore database, the bucket and the Cloud Run services and job from `terraform destroy`. Set false only to tear a test deployment down."
  type        = bool
  default     = true
}

variable "user_service_prefix" {
  description = "Cloud Run services whose names start with this are users' apps: their logs go to the monitor through the Log Router sink (as do those of any revision labelled devgem.dev/owner). Empty: every Cloud Run service of the project except DevGem's own, which is right for a project of DevGem's own. Passed to the deploy function as DEVGEM_SERVICE_PREFIX."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^[a-z0-9-]*$", var.user_service_prefix))
    error_message = "user_service_prefix: lowercase letters, digits and '-' only (Cloud Run service names)."
  }
}

variable "janitor_schedule" {
  description = "When Cloud Scheduler runs the janitor job (cron, in janitor_time_zone)."
  type        = string
  default     = "*/5 * * * *"
}

variable "janitor_time_zone" {
  description = "The time zone of janitor_schedule."
  type        = string
  default     = "Etc/UTC"
}

variable "push_max_delivery_attempts" {
  description = "Deliveries of a push message before it goes to its subscription's dead-letter topic (Pub/Sub: 5-100). Mirrors the embedded bus (cli/src/up.rs, SubscriptionConfig::new)."
  type        = number
  default     = 5

  validation {
    condition     = var.push_max_delivery_attempts >= 5 && var.push_max_delivery_attempts <= 100
    error_message = "push_max_delivery_attempts: Pub/Sub accepts 5 to 100."
  }
}

variable "push_min_backoff" {
  description = "The first redelivery delay of a nacked push message (exponential up to push_max_backoff). Mirrors the embedded bus."
  type        = string
  default     = "1s"
}

variable "push_max_backoff" {
  description = "The longest redelivery delay of a nacked push message (Pub/Sub: at most 600s). Mirrors the embedded bus."
  type        = string
  default     = "60s"
}

variable "dead_letter_retention" {
  description = "How long dead-lettered messages are kept in each dead-letter topic's pull subscription for inspection."
  type        = string
  default     = "604800s"
}

variable "max_instances" {
  description = "Maximum instances per Cloud Run service, by function; functions not listed get 10. The chat's value is also DEVGEM_CHAT_MAX_INSTANCES (the LLM token budget is divided by it)."
  type        = map(number)
  default     = {}
}

variable "rust_log" {
  description = "RUST_LOG of every function (the tracing filter)."
  type        = string
  default     = "info"
}

variable "chat_env" {
  description = "Extra environment variables of the chat function, e.g. { DEVGEM_BRAIN = \"vertex\", DEVGEM_VERTEX_PROJECT = \"...\", DEVGEM_VERTEX_REGIONS = \"us-central1,europe-west4\" }. Never put secret values here: use gemini_api_key_secret."
  type        = map(string)
  default     = {}
}

variable "gemini_api_key_secret" {
  description = "The Secret Manager secret id (in this project) holding a Gemini API key; when set the chat gets DEVGEM_GEMINI_API_KEY_SECRET and may read only that secret. Empty: none."
  type        = string
  default     = ""
}

variable "enable_vertex_ai" {
  description = "Grants the chat's service account roles/aiplatform.user and enables the Vertex AI API, for DEVGEM_BRAIN=vertex."
  type        = bool
  default     = false
}

variable "domain" {
  description = "Optional: a domain (e.g. devgem.example.com) for one HTTPS origin in front of the relay and the api (external Application Load Balancer with a Google-managed certificate): /api/*, /chat, /stats and /health go to the api, everything else (web UI, WebSocket) to the relay. Point an A record at the load_balancer_ip output. Empty: no load balancer."
  type        = string
  default     = ""
}

variable "labels" {
  description = "Labels put on every resource that takes labels."
  type        = map(string)
  default     = {}
}
